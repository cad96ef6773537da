//! The timely executor: compiles a [`Plan`] into one dataflow per worker and runs it.
//!
//! Every worker builds the same operators in the same order (the plan's dependency order):
//!
//! - a **source** becomes a timely source operator. Each batch it emits gets its own timestamp (an epoch
//!   counter), and the source pauses while more than `runtime.max_in_flight` of its epochs have not yet
//!   passed a probe placed after every sink: that is the end-to-end backpressure.
//! - a **transform** or **sink** reads the concatenation of its inputs. When it declares
//!   [`Partitioning::By`], a routing step splits each batch by the key's stable hash and an exchange
//!   sends each part to its worker; [`Partitioning::Single`] sends everything to worker 0.
//! - every stage's dead letters form a second stream; all of them are concatenated and go to the stage
//!   that reads `dead-letters`, or to the JSON-lines file `runtime.dead_letter` (created only when needed).
//!
//! A stage that returns an error (or panics) records the failure and raises an abort flag: sources stop,
//! operators drop their input, the dataflow drains, and [`run`] returns [`RunError::Stage`] naming the
//! stage. A stop request ([`StopHandle`], Ctrl-C in the CLI) makes sources stop reading; what is in flight
//! still reaches the sinks, which then finish normally.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::{RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use opentelemetry::KeyValue;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, ParallelizationContract, Pipeline};
use timely::dataflow::operators::core::{Concatenate, OkErr};
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::dataflow::operators::{Inspect, Probe};
use timely::dataflow::{Scope, Stream};

use crate::batch::Batch;
use crate::cluster::{ClusterSpec, Fingerprint, PeerWatch};
use crate::embedded::EmbeddedIo;
use crate::error::{RunError, StageError};
use crate::observe::{self, AdminServer, RunStats, StageStats};
use crate::partition::split_by_key;
use crate::spec::{Plan, PlannedStage, DEAD_LETTERS};
use crate::stage::{
    DeadLetter, Emitter, Partitioning, Sink, Source, SourceStatus, StageContext, StageInstance, StageKind, StopFlag,
    Transform,
};

type Time = u64;
type Item = Result<Batch, DeadLetter>;
type Batches<'s> = Stream<'s, Time, Vec<Batch>>;
type Dead<'s> = Stream<'s, Time, Vec<DeadLetter>>;
type Items<'s> = Stream<'s, Time, Vec<Item>>;
type ItemBuilder = CapacityContainerBuilder<Vec<Item>>;

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
    pub(crate) io: Option<Arc<EmbeddedIo>>,
}

/// Per-stage figures of a run, summed over this process's workers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StageReport {
    /// Stage id.
    pub id: String,
    /// Stage type.
    #[serde(rename = "type")]
    pub type_name: String,
    /// Source, transform or sink.
    pub kind: StageKind,
    /// Rows received.
    pub rows_in: u64,
    /// Rows emitted downstream.
    pub rows_out: u64,
    /// Batches emitted downstream.
    pub batches_out: u64,
    /// Records rejected to the dead-letter output.
    pub dead_letters: u64,
    /// Records dropped on purpose by the stage (see [`Emitter::skip`]).
    pub skipped: u64,
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
}

impl RunReport {
    /// The figures of one stage.
    pub fn stage(&self, id: &str) -> Option<&StageReport> {
        self.stages.iter().find(|s| s.id == id)
    }
}

struct Shared {
    error: Mutex<Option<RunError>>,
    abort: AtomicBool,
    stats: Arc<RunStats>,
    /// The newest logical time any source of the cluster emitted at, or any stage of this process
    /// received data at, as far as this process knows.
    max_time: AtomicU64,
    dead_written: AtomicU64,
    dead_letter_path: String,
    dead_letter_file: Mutex<Option<std::io::BufWriter<std::fs::File>>>,
}

impl Shared {
    /// Records a run-level error (the first one wins) and stops the pipeline.
    fn set_error(&self, error: RunError) {
        let mut slot = self.error.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(error);
        }
        self.abort.store(true, Ordering::SeqCst);
    }
    /// The recorded error, as text.
    fn error_text(&self) -> String {
        self.error.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|e| e.to_string()).unwrap_or_default()
    }
    fn fail(&self, stage: &str, source: StageError) {
        tracing::debug!(stage, error = %source, "stage failed; stopping the pipeline");
        let mut slot = self.error.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(RunError::Stage { stage: stage.to_string(), error: source });
        }
        self.abort.store(true, Ordering::SeqCst);
    }
    fn aborted(&self) -> bool {
        self.abort.load(Ordering::Relaxed)
    }
}

fn guard<R>(f: impl FnOnce() -> Result<R, StageError>) -> Result<R, StageError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(StageError::Panic(msg))
        }
    }
}

/// Runs a plan to completion on `options.workers` threads (default `runtime.workers`).
pub fn run(plan: Arc<Plan>, options: RunOptions) -> Result<RunReport, RunError> {
    let started = Instant::now();
    let workers = options.workers.unwrap_or(plan.runtime.workers).max(1);
    let cluster = resolve_cluster(&plan, &options)?;
    let stop = options.stop.unwrap_or_default();
    let io = options.io.unwrap_or_default();
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
            let server = AdminServer::start(addr, Arc::clone(&stats)).map_err(|e| RunError::Runtime(e.to_string()))?;
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
    });
    tracing::info!(pipeline = %plan.file, workers, process, processes, stages = plan.stages.len(), "starting pipeline");

    let fingerprint = Fingerprint::of(&plan, process, workers);
    let worker_plan = Arc::clone(&plan);
    let worker_shared = Arc::clone(&shared);
    let names = cluster.clone();
    let body = move |worker: &mut timely::worker::Worker| {
        let index = worker.index();
        let peers = worker.peers();
        let plan = Arc::clone(&worker_plan);
        let shared = Arc::clone(&worker_shared);
        if let Some(cluster) = &names {
            if let Err(why) = handshake(worker, &fingerprint, cluster) {
                shared.set_error(RunError::Cluster(why));
                return;
            }
            shared.stats.cluster_connected.store(true, Ordering::Relaxed);
        }
        let stop = stop.0.clone();
        let io = Arc::clone(&io);
        let built = Arc::clone(&shared);
        worker.dataflow::<Time, _, _>(move |scope| {
            build_dataflow(scope, &plan, &shared, &stop, &io, index, peers);
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
    };
    tracing::info!(elapsed_ms = report.elapsed.as_millis() as u64, dead_letters, "pipeline finished");
    Ok(report)
}

/// Everything one stage operator needs.
struct OpEnv {
    stage_index: usize,
    ctx: StageContext,
    shared: Arc<Shared>,
    /// Metric labels of this stage.
    attrs: [KeyValue; 2],
    /// This worker's slot in the process's per-worker figures.
    local: usize,
}

impl OpEnv {
    fn counters(&self) -> &StageStats {
        &self.shared.stats.stages[self.stage_index]
    }
    fn id(&self) -> &str {
        &self.ctx.stage_id
    }
    /// Runs one stage call, adding its time to the worker's busy time and the stage's histogram.
    #[inline]
    fn timed<R>(&self, f: impl FnOnce() -> R) -> R {
        let started = Instant::now();
        let r = f();
        let took = started.elapsed();
        self.shared.stats.busy_ns[self.local].fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
        if let Some(m) = observe::metrics() {
            m.stage_seconds.record(took.as_secs_f64(), &self.attrs);
        }
        r
    }
    /// Offers a batch to the stage's taps (`dfp tap`), when any are attached.
    #[inline]
    fn tap(&self, batch: &Batch) {
        let taps = &self.shared.stats.taps;
        if taps.active(self.stage_index) {
            taps.offer(self.stage_index, batch);
        }
    }
    /// Moves what a stage emitted into the output, counting it.
    fn flush(&self, em: &mut Emitter, out: &mut Vec<Item>) {
        let (batches, dead) = em.take();
        let c = self.counters();
        c.skipped.fetch_add(std::mem::take(&mut em.skipped), Ordering::Relaxed);
        if let Some(t) = em.event_time.take() {
            c.newest_event_us.fetch_max(t, Ordering::Relaxed);
        }
        for b in batches {
            c.rows_out.fetch_add(b.num_rows() as u64, Ordering::Relaxed);
            c.batches_out.fetch_add(1, Ordering::Relaxed);
            self.tap(&b);
            out.push(Ok(b));
        }
        for mut d in dead {
            d.stage = self.ctx.stage_id.clone();
            c.dead.fetch_add(1, Ordering::Relaxed);
            out.push(Err(d));
        }
    }
}

fn build_dataflow<'s>(
    scope: Scope<'s, Time>,
    plan: &Plan,
    shared: &Arc<Shared>,
    stop: &StopFlag,
    io: &Arc<EmbeddedIo>,
    index: usize,
    peers: usize,
) {
    let probe: ProbeHandle<Time> = ProbeHandle::new();
    let live_sources = Rc::new(Cell::new(plan.stages.iter().filter(|s| s.kind == StageKind::Source).count()));
    if shared.stats.processes > 1 {
        cluster_control(scope, shared, stop, Rc::clone(&live_sources), index, peers);
    }
    // Stages fed (directly or not) by the dead-letter stream are built after it exists.
    let mut after_dead: HashSet<&str> = HashSet::new();
    for s in &plan.stages {
        if s.inputs.iter().any(|i| i == DEAD_LETTERS || after_dead.contains(i.as_str())) {
            after_dead.insert(&s.id);
        }
    }
    let consumers: HashSet<&str> = plan.stages.iter().flat_map(|s| s.inputs.iter().map(String::as_str)).collect();
    let mut outputs: HashMap<String, Batches<'s>> = HashMap::new();
    let mut dead_streams: Vec<Dead<'s>> = Vec::new();
    let mut late_dead: Vec<Dead<'s>> = Vec::new();

    let build = |stage_index: usize, stage: &PlannedStage, outputs: &mut HashMap<String, Batches<'s>>| -> Dead<'s> {
        let env = OpEnv {
            stage_index,
            ctx: StageContext {
                stage_id: stage.id.clone(),
                worker_index: index,
                workers: peers,
                process: shared.stats.process,
                processes: shared.stats.processes,
                io: Arc::clone(io),
                stop: stop.clone(),
                stats: Some(Arc::clone(&shared.stats)),
            },
            shared: Arc::clone(shared),
            attrs: [KeyValue::new("pipeline", plan.file.clone()), KeyValue::new("stage", stage.id.clone())],
            local: shared.stats.local(index),
        };
        let instance = match guard(|| stage.factory.build(&env.ctx)) {
            Ok(inst) if inst.kind() == stage.kind => Some(inst),
            Ok(inst) => {
                env.shared.fail(
                    &stage.id,
                    StageError::Other(format!("built a {} but is registered as a {}", inst.kind(), stage.kind)),
                );
                None
            }
            Err(e) => {
                env.shared.fail(&stage.id, e);
                None
            }
        };
        let items: Items<'s> = match stage.kind {
            StageKind::Source => {
                let src = match instance {
                    Some(StageInstance::Source(s)) => Some(s),
                    _ => None,
                };
                source_op(scope, env, src, &probe, plan.runtime.max_in_flight, Rc::clone(&live_sources))
            }
            StageKind::Transform | StageKind::Sink => {
                let inputs: Vec<Batches<'s>> = stage.inputs.iter().filter_map(|i| outputs.get(i).cloned()).collect();
                let input = scope.concatenate(inputs);
                let partitioning = match &instance {
                    Some(StageInstance::Transform(t)) => t.input_partitioning(),
                    Some(StageInstance::Sink(s)) => s.input_partitioning(),
                    _ => Partitioning::Any,
                };
                let op = match instance {
                    Some(StageInstance::Transform(t)) => Op::Transform(t),
                    Some(StageInstance::Sink(s)) => Op::Sink(s),
                    _ => Op::Failed,
                };
                let routed = route(input, partitioning.clone(), peers, Arc::clone(shared), stage.id.clone());
                match partitioning {
                    Partitioning::Any => stage_op(routed, Pipeline, env, op),
                    Partitioning::By(_) | Partitioning::Single => {
                        stage_op(routed, Exchange::new(|x: &(u64, Batch)| x.0), env, op)
                    }
                }
            }
        };
        let (batches, dead) = items.ok_err::<Vec<Batch>, Batch, Vec<DeadLetter>, DeadLetter, _>(|x| x);
        if stage.kind == StageKind::Sink || !consumers.contains(stage.id.as_str()) {
            let _ = batches.clone().probe_with(&probe);
        }
        outputs.insert(stage.id.clone(), batches);
        dead
    };

    for (i, stage) in plan.stages.iter().enumerate() {
        if !after_dead.contains(stage.id.as_str()) {
            dead_streams.push(build(i, stage, &mut outputs));
        }
    }
    let all_dead = scope.concatenate(dead_streams);
    if plan.routes_dead_letters() {
        outputs.insert(DEAD_LETTERS.to_string(), dead_letters_to_batches(all_dead));
        for (i, stage) in plan.stages.iter().enumerate() {
            if after_dead.contains(stage.id.as_str()) {
                late_dead.push(build(i, stage, &mut outputs));
            }
        }
        // Dead letters of the dead-letter branch itself are logged (routing them would loop).
        let _ = scope.concatenate(late_dead).inspect(|d: &DeadLetter| {
            tracing::warn!(stage = %d.stage, reason = %d.reason, origin = %d.origin, "dead letter in the dead-letter branch")
        });
    } else {
        let sink = dead_letter_file_op(all_dead, Arc::clone(shared));
        let _ = sink.probe_with(&probe);
    }
}

enum Op {
    Transform(Box<dyn Transform>),
    Sink(Box<dyn Sink>),
    Failed,
}

fn source_op<'s>(
    scope: Scope<'s, Time>,
    env: OpEnv,
    mut src: Option<Box<dyn Source>>,
    probe: &ProbeHandle<Time>,
    max_in_flight: u64,
    live: Rc<Cell<usize>>,
) -> Items<'s> {
    let probe = probe.clone();
    // When this source ends: nothing of it is in flight any more, and this worker has one running
    // source fewer (the cluster control needs the count).
    let ended = move |env: &OpEnv| {
        env.counters().in_flight[env.local].store(0, Ordering::Relaxed);
        live.set(live.get().saturating_sub(1));
    };
    let name = format!("source:{}", env.id());
    source::<Time, ItemBuilder, _, _>(scope, &name, move |cap, info| {
        let activator = scope.activator_for(info.address);
        let mut cap = Some(cap);
        let mut epoch: Time = 0;
        let mut opened = false;
        let mut em = Emitter::new();
        let mut buf: Vec<Item> = Vec::new();
        // Logical times below `completed` have passed every sink (reported to the source once each).
        let mut completed: Time = 0;
        // Done producing; waiting for what is in flight to pass every sink before `finish`.
        let mut draining = false;
        // The latest logical time a batch was emitted at.
        let mut last_emitted: Option<Time> = None;
        // Whether the source was told to pause for backpressure.
        let mut paused = false;
        move |output| {
            let Some(c) = cap.as_mut() else { return };
            let Some(s) = src.as_mut() else {
                cap = None;
                ended(&env);
                return;
            };
            if opened && !env.shared.aborted() {
                let done = probe.with_frontier(|f| f.iter().min().copied()).unwrap_or(*c.time());
                let done = done.min(*c.time());
                if done > completed {
                    completed = done;
                    if let Err(e) = guard(|| s.completed(completed)) {
                        env.shared.fail(env.id(), e);
                    }
                }
            }
            if draining {
                if env.shared.aborted() || completed >= *c.time() {
                    if let Err(e) = guard(|| s.finish(&env.ctx)) {
                        env.shared.fail(env.id(), e);
                    }
                    src = None;
                    cap = None;
                    ended(&env);
                } else {
                    activator.activate_after(Duration::from_millis(1));
                }
                return;
            }
            let mut close = env.shared.aborted() || env.ctx.stop_requested();
            if !close && !opened {
                opened = true;
                match guard(|| s.open(&env.ctx)) {
                    Ok(()) => {
                        env.counters().opened.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        env.shared.fail(env.id(), e);
                        close = true;
                    }
                }
            }
            if !close {
                let done = probe.with_frontier(|f| f.iter().min().copied()).unwrap_or(epoch);
                env.counters().in_flight[env.local].store(epoch.saturating_sub(done), Ordering::Relaxed);
                if epoch >= max_in_flight && probe.less_than(&(epoch - max_in_flight)) {
                    if !paused {
                        paused = true;
                        if let Err(e) = guard(|| s.backpressure(true)) {
                            env.shared.fail(env.id(), e);
                        }
                    }
                    activator.activate_after(Duration::from_millis(1));
                    return;
                }
                if paused {
                    paused = false;
                    if let Err(e) = guard(|| s.backpressure(false)) {
                        env.shared.fail(env.id(), e);
                    }
                }
                // Sources that name times stay at or above the newest time seen anywhere (in a cluster,
                // another process's clock may run ahead; see `Emitter::time_floor`).
                // Past the newest time, so that what was emitted there is released once this source moves.
                em.floor = (*c.time()).max(env.shared.max_time.load(Ordering::Relaxed) + 1);
                match env.timed(|| guard(|| s.poll(&env.ctx, &mut em))) {
                    Ok(status) => {
                        env.flush(&mut em, &mut buf);
                        for item in buf.drain(..) {
                            match item {
                                Ok(mut batch) => match batch.envelope.time {
                                    // The source names the logical time: emit there, keep the capability.
                                    Some(hint) => {
                                        let t = hint.max(*c.time());
                                        env.shared.max_time.fetch_max(t, Ordering::Relaxed);
                                        c.downgrade(&t);
                                        last_emitted = Some(t);
                                        batch.envelope.time = Some(t);
                                        output.session(&*c).give(Ok(batch));
                                    }
                                    // Otherwise every batch gets the next time.
                                    None => {
                                        let t = *c.time();
                                        last_emitted = Some(t);
                                        batch.envelope.time = Some(t);
                                        output.session(&*c).give(Ok(batch));
                                        c.downgrade(&(t + 1));
                                    }
                                },
                                dead => output.session(&*c).give(dead),
                            }
                        }
                        if let Some(t) = em.advance.take() {
                            if t > *c.time() {
                                tracing::trace!(stage = %env.id(), worker = env.ctx.worker_index, from = *c.time(), to = t, "source time advanced");
                                c.downgrade(&t);
                            }
                        }
                        epoch = *c.time();
                        match status {
                            SourceStatus::Ready => activator.activate(),
                            SourceStatus::Idle => activator.activate_after(Duration::from_millis(5)),
                            SourceStatus::Exhausted => close = true,
                        }
                    }
                    Err(e) => {
                        env.shared.fail(env.id(), e);
                        close = true;
                    }
                }
            }
            if close {
                if opened && !env.shared.aborted() && s.wants_completion() {
                    // Keep the capability until every emitted batch has passed the sinks, so the source can
                    // be told (and, say, commit its offsets) before it finishes. Nothing more is emitted, so
                    // the capability moves past the last batch's time (a source-named time keeps it there).
                    let next = last_emitted.map_or(*c.time(), |t| t + 1).max(*c.time());
                    c.downgrade(&next);
                    draining = true;
                    activator.activate();
                    return;
                }
                if opened {
                    if let Err(e) = guard(|| s.finish(&env.ctx)) {
                        env.shared.fail(env.id(), e);
                    }
                }
                src = None;
                cap = None;
                ended(&env);
            }
        }
    })
}

/// Tags each batch with its destination worker (splitting by key when asked).
fn route<'s>(
    input: Batches<'s>,
    partitioning: Partitioning,
    peers: usize,
    shared: Arc<Shared>,
    stage_id: String,
) -> Stream<'s, Time, Vec<(u64, Batch)>> {
    input.unary::<CapacityContainerBuilder<Vec<(u64, Batch)>>, _, _, _>(Pipeline, "route", move |_, _| {
        move |input, output| {
            input.for_each(|cap, data| {
                let mut session = output.session(&cap);
                for batch in data.drain(..) {
                    if shared.aborted() {
                        continue;
                    }
                    match &partitioning {
                        Partitioning::Any | Partitioning::Single => session.give((0, batch)),
                        Partitioning::By(column) => match split_by_key(batch, column, peers) {
                            Ok(parts) => session.give_iterator(parts.into_iter()),
                            Err(e) => shared.fail(&stage_id, e),
                        },
                    }
                }
            });
        }
    })
}

fn stage_op<'s, P>(input: Stream<'s, Time, Vec<(u64, Batch)>>, pact: P, env: OpEnv, op: Op) -> Items<'s>
where
    P: ParallelizationContract<Time, Vec<(u64, Batch)>>,
{
    let name = format!("stage:{}", env.id());
    let mut op = op;
    let mut opened = false;
    let scope = input.scope();
    input.unary_frontier::<ItemBuilder, _, _, P>(pact, &name, move |default_cap, info| {
        let activator = scope.activator_for(info.address);
        let mut held = Some(default_cap);
        let mut em = Emitter::new();
        let mut buf: Vec<Item> = Vec::new();
        move |(input, frontier), output| {
            if !opened {
                opened = true;
                let r = match &mut op {
                    Op::Transform(t) => guard(|| t.open(&env.ctx)),
                    Op::Sink(s) => guard(|| s.open(&env.ctx)),
                    Op::Failed => Ok(()),
                };
                match r {
                    Ok(()) => {
                        env.counters().opened.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        env.shared.fail(env.id(), e);
                        op = Op::Failed;
                    }
                }
            }
            input.for_each(|cap, data| {
                if env.shared.aborted() {
                    data.clear();
                    return;
                }
                if let Some(t) = cap.least() {
                    env.shared.max_time.fetch_max(*t, Ordering::Relaxed);
                }
                for (_, mut batch) in data.drain(..) {
                    batch.envelope.time = cap.least().copied();
                    env.counters().rows_in.fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
                    let r = match &mut op {
                        Op::Transform(t) => env.timed(|| guard(|| t.process(batch, &mut em))),
                        Op::Sink(s) => {
                            env.tap(&batch);
                            env.timed(|| guard(|| s.write(batch)))
                        }
                        Op::Failed => Ok(()),
                    };
                    if let Err(e) = r {
                        env.shared.fail(env.id(), e);
                        op = Op::Failed;
                    }
                    env.flush(&mut em, &mut buf);
                }
                if !buf.is_empty() {
                    output.session(&cap).give_iterator(buf.drain(..));
                }
            });
            if let (Some(c), Op::Transform(tr)) = (held.as_ref(), &mut op) {
                if !env.shared.aborted() {
                    match env.timed(|| guard(|| tr.poll_timer(&mut em))) {
                        Ok(Some(delay)) => activator.activate_after(delay),
                        Ok(None) => {}
                        Err(e) => env.shared.fail(env.id(), e),
                    }
                    env.flush(&mut em, &mut buf);
                    if !buf.is_empty() {
                        output.session(c).give_iterator(buf.drain(..));
                    }
                }
            }
            if let Some(c) = held.as_mut() {
                let f = frontier.frontier();
                if f.is_empty() {
                    let r = match &mut op {
                        Op::Transform(t) if !env.shared.aborted() => guard(|| t.finish(&mut em)),
                        Op::Sink(s) => guard(|| s.finish()),
                        _ => Ok(()),
                    };
                    if let Err(e) = r {
                        env.shared.fail(env.id(), e);
                    }
                    op = Op::Failed;
                    env.flush(&mut em, &mut buf);
                    if !buf.is_empty() {
                        output.session(&*c).give_iterator(buf.drain(..));
                    }
                    held = None;
                } else if let Some(t) = f.iter().min().copied() {
                    if *c.time() < t {
                        // Release what the stage held for earlier times, at the still-held earlier time.
                        if let Op::Transform(tr) = &mut op {
                            if !env.shared.aborted() {
                                if let Err(e) = guard(|| tr.advance(t, &mut em)) {
                                    env.shared.fail(env.id(), e);
                                    op = Op::Failed;
                                }
                            }
                        }
                        env.flush(&mut em, &mut buf);
                        if !buf.is_empty() {
                            output.session(&*c).give_iterator(buf.drain(..));
                        }
                        tracing::trace!(stage = %env.id(), worker = env.ctx.worker_index, frontier = t, "input frontier"); c.downgrade(&t);
                    }
                }
            }
        }
    })
}

/// The cluster this run joins, from the options or the plan's `runtime:`; `None` for a single process.
fn resolve_cluster(plan: &Plan, options: &RunOptions) -> Result<Option<ClusterSpec>, RunError> {
    let processes = options.processes.unwrap_or(plan.runtime.processes);
    let hostfile = options.hostfile.clone().or_else(|| plan.runtime.hostfile.clone());
    let process = options.process.or(plan.runtime.process);
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

/// Exchanges fingerprints with every worker of the cluster through a one-record dataflow (built the same
/// by every dfp), before the pipeline's own dataflow exists: a mismatch is an error naming the process.
fn handshake(worker: &mut timely::worker::Worker, mine: &Fingerprint, cluster: &ClusterSpec) -> Result<(), String> {
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
        input.send(serde_json::to_string(mine).map_err(|e| e.to_string())?);
    }
    drop(input);
    while !probe.done() {
        worker.step_or_park(Some(Duration::from_millis(10)));
    }
    let mut problems = Vec::new();
    for text in received.borrow().iter() {
        let theirs: Fingerprint =
            serde_json::from_str(text).map_err(|e| format!("unreadable peer fingerprint: {e}"))?;
        if let Some(why) = mine.differences(&theirs) {
            problems.push(format!("{} runs something else: {why}", cluster.name(theirs.process)));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        problems.sort();
        problems.dedup();
        Err(format!("{} refuses to start: {}", cluster.name(cluster.process), problems.join("; ")))
    }
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
}

/// Spreads stops and failures over the cluster: each worker broadcasts its process's stop request or
/// failure once, and holds its capability until every worker's sources have ended.
fn cluster_control<'s>(
    scope: Scope<'s, Time>,
    shared: &Arc<Shared>,
    stop: &StopFlag,
    live_sources: Rc<Cell<usize>>,
    index: usize,
    peers: usize,
) {
    use timely::dataflow::operators::vec::Broadcast;
    let done: Rc<RefCell<HashSet<usize>>> = Rc::new(RefCell::new(HashSet::new()));
    let process = shared.stats.process;
    let (out_shared, out_stop, out_done) = (Arc::clone(shared), stop.clone(), Rc::clone(&done));
    let control =
        source::<Time, CapacityContainerBuilder<Vec<Control>>, _, _>(scope, "cluster-control", move |cap, info| {
            let activator = scope.activator_for(info.address);
            let mut cap = Some(cap);
            let (mut sent_stop, mut sent_abort, mut sent_done) = (false, false, false);
            let mut sent_time = 0;
            move |output| {
                let Some(c) = cap.as_ref() else { return };
                let time = out_shared.max_time.load(Ordering::Relaxed);
                if time > sent_time {
                    sent_time = time;
                    output.session(c).give(Control::Time { time });
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
            in_shared.max_time.fetch_max(*time, Ordering::Relaxed);
        }
    });
}

/// The schema of dead-letter batches.
pub fn dead_letter_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("stage", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("record", DataType::Utf8, false),
        Field::new("origin", DataType::Utf8, false),
    ]))
}

/// Dead letters as one record batch (columns `stage`, `reason`, `record`, `origin`).
pub fn dead_letters_batch(dead: &[DeadLetter]) -> RecordBatch {
    let col = |f: fn(&DeadLetter) -> &str| Arc::new(StringArray::from_iter_values(dead.iter().map(f))) as _;
    RecordBatch::try_new(
        dead_letter_schema(),
        vec![col(|d| &d.stage), col(|d| &d.reason), col(|d| &d.record), col(|d| &d.origin)],
    )
    .expect("dead-letter columns match their schema")
}

fn dead_letters_to_batches(dead: Dead<'_>) -> Batches<'_> {
    dead.unary::<CapacityContainerBuilder<Vec<Batch>>, _, _, _>(Pipeline, "dead-letters", |_, _| {
        move |input, output| {
            input.for_each(|cap, data| {
                let batch = Batch::new(dead_letters_batch(data), DEAD_LETTERS);
                data.clear();
                output.session(&cap).give(batch);
            });
        }
    })
}

/// Writes unrouted dead letters as JSON lines on worker 0; the file is created on the first letter.
fn dead_letter_file_op(dead: Dead<'_>, shared: Arc<Shared>) -> Stream<'_, Time, Vec<()>> {
    dead.unary::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
        Exchange::new(|_: &DeadLetter| 0u64),
        "dead-letter-file",
        move |_, _| {
            move |input, _output| {
                input.for_each(|_cap, data| {
                    if data.is_empty() {
                        return;
                    }
                    let mut slot = shared.dead_letter_file.lock().unwrap_or_else(|p| p.into_inner());
                    if slot.is_none() {
                        let path = std::path::Path::new(&shared.dead_letter_path);
                        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                            let _ = std::fs::create_dir_all(dir);
                        }
                        match std::fs::File::create(path) {
                            Ok(f) => *slot = Some(std::io::BufWriter::new(f)),
                            Err(e) => {
                                drop(slot);
                                shared.fail("dead-letters", StageError::io(path, e));
                                data.clear();
                                return;
                            }
                        }
                    }
                    if let Some(w) = slot.as_mut() {
                        for d in data.drain(..) {
                            let line = serde_json::to_string(&d).unwrap_or_default();
                            if let Err(e) = writeln!(w, "{line}") {
                                let path = shared.dead_letter_path.clone();
                                drop(slot);
                                shared.fail("dead-letters", StageError::io(path, e));
                                return;
                            }
                            shared.dead_written.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        },
    )
}
