//! The timely executor: compiles a [`Plan`] into one dataflow per worker and runs it.
//!
//! Every worker builds the same operators in the same order (the plan's dependency order):
//!
//! - a **source** becomes a timely source operator. Each batch it emits gets its own timestamp (an epoch
//!   counter), and the source pauses while more than `runtime.max_in_flight` of its epochs have not yet
//!   passed a probe placed after every sink: that is the end-to-end backpressure.
//! - a **transform** or **sink** reads the concatenation of its inputs. When it declares
//!   [`Partitioning::By`](crate::stage::Partitioning::By), a routing step splits each batch by the key's
//!   stable hash and an exchange sends each part to its worker;
//!   [`Partitioning::Single`](crate::stage::Partitioning::Single) sends everything to worker 0.
//! - every stage's dead letters form a second stream; all of them are concatenated and go to the stage
//!   that reads `dead-letters`, or to the JSON-lines file `runtime.dead_letter` (created only when needed).
//!
//! A stage that returns an error (or panics) records the failure and raises an abort flag: sources stop,
//! operators drop their input, the dataflow drains, and [`run`] returns [`RunError::Stage`] naming the
//! stage. A stop request ([`StopHandle`], Ctrl-C in the CLI) makes sources stop reading; what is in flight
//! still reaches the sinks, which then finish normally.
//!
//! This module runs the plan ([`run`]); building one worker's dataflow, the source operator, the
//! transform/sink operator, the dead letters and the state they share each have a file of their own, and
//! the cluster handshake and control stream live in [`crate::cluster`].

mod dataflow;
mod dead_letters;
mod source_op;
mod stage_op;
mod state;

use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use self::dataflow::build_dataflow;
use self::state::{Shared, Time};
use crate::cluster::{handshake, resolve_cluster, Fingerprint, PeerWatch};
use crate::commits::Commits;
use crate::error::{RunError, StageError};
use crate::observe::{self, AdminOptions, AdminServer, AdminTls, RunStats, StageStats};
use crate::spec::Plan;
use crate::stage::{Resources, StopFlag};

pub use self::dead_letters::{dead_letter_schema, dead_letters_batch};
pub use crate::observe::StageReport;

/// Asks a running pipeline to stop gracefully: sources stop reading, in-flight data drains to the sinks.
#[derive(Clone, Default, Debug)]
pub struct StopHandle(pub(crate) StopFlag);

impl StopHandle {
    /// A new, unset handle.
    pub fn new() -> Self {
        Self::default()
    }
    /// Requests the stop.
    pub fn stop(&self) {
        self.0.set();
    }
    /// True once requested.
    pub fn is_stopped(&self) -> bool {
        self.0.is_set()
    }
}

/// Options of one run; unset fields take the plan's `runtime:` values.
#[derive(Default, Debug)]
pub struct RunOptions {
    /// Worker threads (overrides `runtime.workers`).
    pub workers: Option<usize>,
    /// Where unrouted dead letters go (overrides `runtime.dead_letter`).
    pub dead_letter: Option<String>,
    /// A handle to stop the run from another thread.
    pub stop: Option<StopHandle>,
    /// Serve the admin endpoint (`/metrics`, `/healthz`, `/readyz`, `/stats`, `/tap`) on this
    /// `HOST:PORT` (overrides `runtime.metrics`).
    pub metrics: Option<String>,
    /// A file holding the cluster secret (overrides `runtime.cluster_secret_file`).
    pub cluster_secret_file: Option<String>,
    /// A file holding the admin endpoint's bearer token (overrides `runtime.admin.token_file`).
    pub admin_token_file: Option<String>,
    /// Keep the admin endpoint up this long after the run ends, so that a last scrape sees the final
    /// figures (batch jobs).
    pub metrics_linger: Option<Duration>,
    /// Processes in the cluster (overrides `runtime.processes`; see [`crate::cluster`]).
    pub processes: Option<usize>,
    /// This process's index in the cluster (overrides `runtime.process`).
    pub process: Option<usize>,
    /// The hostfile: `host:port` per process (overrides `runtime.hostfile`).
    pub hostfile: Option<String>,
    /// How long to wait for the cluster's processes to connect (overrides `runtime.connect_timeout_secs`).
    pub connect_timeout: Option<Duration>,
    /// What the stages of the run find with [`StageContext::resource`](crate::StageContext::resource) (the
    /// embedding API puts its channels here).
    pub(crate) resources: Resources,
}

/// What a finished run did.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// One entry per stage, in dependency order.
    pub stages: Vec<StageReport>,
    /// Worker threads used (in this process).
    pub workers: usize,
    /// This process's index in its cluster (0 alone); the figures above are this process's.
    pub process: usize,
    /// Processes in the cluster (1 alone).
    pub processes: usize,
    /// Wall-clock time of the run.
    pub elapsed: Duration,
    /// The dead-letter file, when one was written.
    pub dead_letter_file: Option<String>,
    /// Total dead letters.
    pub dead_letters: u64,
    /// Problems stages reported that did not stop the run (see [`RunStats::warnings`]).
    pub warnings: Vec<String>,
    /// True when the run was asked to stop (Ctrl-C, SIGTERM, [`StopHandle::stop`]) before its sources were
    /// exhausted: what was read reached the sinks, but not everything was read.
    pub stopped_early: bool,
}

impl RunReport {
    /// The figures of one stage.
    pub fn stage(&self, id: &str) -> Option<&StageReport> {
        self.stages.iter().find(|s| s.id == id)
    }
}

/// Runs a plan to completion on `options.workers` threads (default `runtime.workers`).
pub fn run(plan: Arc<Plan>, options: RunOptions) -> Result<RunReport, RunError> {
    let started = Instant::now();
    let workers = options.workers.unwrap_or(plan.runtime.workers).max(1);
    let cluster = resolve_cluster(&plan, options.processes, options.process, options.hostfile.as_deref())?;
    let stop = options.stop.unwrap_or_default();
    let resources = options.resources;
    let (process, processes) = cluster.as_ref().map_or((0, 1), |c| (c.process, c.processes()));
    let stats = Arc::new(RunStats::in_cluster(
        &plan.file,
        workers,
        process,
        processes,
        plan.stages.iter().map(|s| (s.id.clone(), s.type_name.clone(), s.kind)),
    ));
    let admin = match options.metrics.as_deref().or(plan.runtime.metrics.as_deref()) {
        Some(addr) => {
            let admin = admin_options(&plan.runtime.admin, options.admin_token_file.as_deref())?;
            let server = AdminServer::start_with(addr, Arc::clone(&stats), &admin)
                .map_err(|e| RunError::Runtime(e.to_string()))?;
            observe::register_run(&stats);
            Some(server)
        }
        None => None,
    };
    let shared = Arc::new(Shared {
        error: Mutex::new(None),
        abort: AtomicBool::new(false),
        stats: Arc::clone(&stats),
        max_time: AtomicU64::new(0),
        dead_written: AtomicU64::new(0),
        dead_letter_path: options.dead_letter.unwrap_or_else(|| plan.runtime.dead_letter.clone()),
        dead_letter_file: Mutex::new(None),
        cut_short: AtomicBool::new(false),
        commits: Arc::new(Commits::new(workers * processes, processes > 1)),
        states: Default::default(),
    });
    tracing::info!(pipeline = %plan.file, workers, process, processes, stages = plan.stages.len(), "starting pipeline");

    let secret = match &cluster {
        Some(_) => cluster_secret(&plan.runtime, options.cluster_secret_file.as_deref())?,
        None => None,
    };
    let fingerprint = Fingerprint::of(&plan, process, workers).with_secret(secret.is_some());
    let secret = secret.map(Arc::new);
    let worker_plan = Arc::clone(&plan);
    let worker_shared = Arc::clone(&shared);
    let names = cluster.clone();
    let body = move |worker: &mut timely::worker::Worker| {
        let index = worker.index();
        let peers = worker.peers();
        let plan = Arc::clone(&worker_plan);
        let shared = Arc::clone(&worker_shared);
        if let Some(cluster) = &names {
            if let Err(why) = handshake(worker, &fingerprint, cluster, secret.as_deref().map(Vec::as_slice)) {
                shared.set_error(RunError::Cluster(why));
                return;
            }
            shared.stats.cluster_connected.store(true, Ordering::Relaxed);
        }
        let stop = stop.0.clone();
        let resources = resources.clone();
        let built = Arc::clone(&shared);
        worker.dataflow::<Time, _, _>(move |scope| {
            build_dataflow(scope, &plan, &shared, &stop, &resources, index, peers);
        });
        built.stats.workers_built.fetch_add(1, Ordering::Relaxed);
    };
    let guards = match &cluster {
        None => timely::execute(timely::Config::process(workers), body).map_err(RunError::Runtime)?,
        Some(c) => {
            PeerWatch::install(&c.addresses);
            let config = timely::Config {
                communication: timely::CommunicationConfig::Cluster {
                    threads: workers,
                    process: c.process,
                    addresses: c.addresses.clone(),
                    report: false,
                    zerocopy: false,
                },
                worker: timely::WorkerConfig::default(),
            };
            // Timely waits for every peer without a limit: wait here with one, and say who we wait for.
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::Builder::new()
                .name("dfp-cluster-connect".into())
                .spawn(move || {
                    let _ = tx.send(timely::execute(config, body));
                })
                .map_err(|e| RunError::Runtime(e.to_string()))?;
            let timeout = options
                .connect_timeout
                .unwrap_or_else(|| Duration::from_secs_f64(plan.runtime.connect_timeout_secs.max(0.001)));
            match rx.recv_timeout(timeout) {
                Ok(result) => result.map_err(RunError::Cluster)?,
                Err(_) => {
                    let peers: Vec<String> =
                        (0..c.processes()).filter(|p| *p != c.process).map(|p| c.name(p)).collect();
                    return Err(RunError::Cluster(format!(
                        "{} waited {:.0} s for its peers and not all of them connected: {}. Start every process with the same hostfile and its own --process index, and check that the addresses are reachable",
                        c.name(c.process),
                        timeout.as_secs_f64(),
                        peers.join(", ")
                    )));
                }
            }
        }
    };
    let mut worker_failures = Vec::new();
    // Joining also joins timely's network threads, which panic when a peer was lost.
    match catch_unwind(AssertUnwindSafe(move || guards.join())) {
        Ok(results) => worker_failures.extend(results.into_iter().filter_map(Result::err)),
        Err(_) if PeerWatch::lost().is_some() => {}
        Err(_) => worker_failures.push("timely's network threads failed".into()),
    }
    let elapsed = started.elapsed();
    stats.finished.store(true, Ordering::SeqCst);
    stats.taps.close();
    if let Some(server) = admin {
        if let Some(linger) = options.metrics_linger.filter(|d| !d.is_zero()) {
            tracing::info!(seconds = linger.as_secs_f64(), addr = %server.local_addr(), "run ended; keeping the metrics endpoint up");
            std::thread::sleep(linger);
        }
        server.shutdown();
        observe::unregister_run(&stats);
    }
    if let Some(file) = shared.dead_letter_file.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
        if let Err(e) = file.flush() {
            shared.fail("dead-letters", StageError::io(&shared.dead_letter_path, e));
        }
    }
    if let Some(err) = shared.error.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(err);
    }
    if cluster.is_some() {
        if let Some(lost) = PeerWatch::lost() {
            return Err(RunError::Cluster(format!(
                "{lost}. Timely clusters are fail-stop: restart every process (sources that commit, such as Kafka, resume from their committed offsets)"
            )));
        }
    }
    if !worker_failures.is_empty() {
        return Err(RunError::Runtime(format!("worker failed: {}", worker_failures.join("; "))));
    }
    let stages: Vec<StageReport> = shared.stats.stages.iter().map(StageStats::report).collect();
    let dead_letters = stages.iter().map(|s| s.dead_letters).sum();
    let written = shared.dead_written.load(Ordering::Relaxed) > 0;
    let report = RunReport {
        stages,
        workers,
        process,
        processes,
        elapsed,
        dead_letter_file: written.then(|| shared.dead_letter_path.clone()),
        dead_letters,
        warnings: shared.stats.warnings(),
        stopped_early: shared.cut_short.load(Ordering::Relaxed),
    };
    tracing::info!(elapsed_ms = report.elapsed.as_millis() as u64, dead_letters, "pipeline finished");
    Ok(report)
}

/// The admin endpoint's protection from `runtime.admin` (the token read from its file or variable now).
fn admin_options(cfg: &crate::spec::AdminConfig, token_file: Option<&str>) -> Result<AdminOptions, RunError> {
    let err = |m: String| RunError::Runtime(format!("admin endpoint: {m}"));
    let token = match (token_file.or(cfg.token_file.as_deref()), cfg.token_env.as_deref()) {
        (Some(path), _) => {
            let text =
                std::fs::read_to_string(path).map_err(|e| err(format!("cannot read the token file {path}: {e}")))?;
            let t = text.trim().to_string();
            if t.is_empty() {
                return Err(err(format!("the token file {path} is empty")));
            }
            Some(t)
        }
        (None, Some(var)) => match std::env::var(var) {
            Ok(v) if !v.trim().is_empty() => Some(v.trim().to_string()),
            _ => return Err(err(format!("the token variable {var} is not set"))),
        },
        (None, None) => None,
    };
    let tls = match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(cert), Some(key)) => Some(AdminTls { cert: cert.into(), key: key.into() }),
        (None, None) => None,
        _ => return Err(err("tls_cert and tls_key go together".into())),
    };
    Ok(AdminOptions { token, protect_health: cfg.protect_health, tls, max_connections: cfg.max_connections })
}

/// The cluster secret from `--cluster-secret-file`, `runtime.cluster_secret_file` or
/// `runtime.cluster_secret_env`, if any.
fn cluster_secret(runtime: &crate::spec::RuntimeConfig, file: Option<&str>) -> Result<Option<Vec<u8>>, RunError> {
    let err = |m: String| RunError::Cluster(format!("cluster secret: {m}"));
    let secret = match (file.or(runtime.cluster_secret_file.as_deref()), runtime.cluster_secret_env.as_deref()) {
        (Some(path), _) => {
            std::fs::read_to_string(path).map_err(|e| err(format!("cannot read {path}: {e}")))?.trim().to_string()
        }
        (None, Some(var)) => std::env::var(var).map_err(|_| err(format!("the variable {var} is not set")))?,
        (None, None) => return Ok(None),
    };
    if secret.len() < 16 {
        return Err(err("must be at least 16 characters".into()));
    }
    Ok(Some(secret.into_bytes()))
}
