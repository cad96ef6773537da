//! What a stage is: a [`Source`] produces batches, a [`Transform`] turns a batch into batches, a [`Sink`]
//! consumes batches.
//!
//! Every worker builds its own instance of every stage (through the stage's
//! [`StageFactory`](crate::registry::StageFactory)), so instances need not be `Sync`. The lifecycle is
//! explicit — `open`, then many `poll`/`process`/`write` calls, then `finish` once the input is exhausted —
//! so that a plugin behind a C ABI can implement the same traits.
//!
//! A record that a stage cannot handle (malformed JSON, a wrong type in one row) is not an error: the stage
//! hands it to [`Emitter::dead_letter`] with a reason and carries on. Returning `Err` means the stage itself
//! cannot go on, and stops the pipeline.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::batch::Batch;
use crate::commits::{Commits, Mark};
use crate::error::StageError;
use crate::family::{Families, Family};
use crate::observe::RunStats;

/// The three kinds of stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageKind {
    /// Produces batches; has no inputs.
    Source,
    /// Batch in, batches out.
    Transform,
    /// Consumes batches; cannot be another stage's input.
    Sink,
}

impl std::fmt::Display for StageKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StageKind::Source => "source",
            StageKind::Transform => "transform",
            StageKind::Sink => "sink",
        })
    }
}

/// How a stage needs its input spread over workers. The runtime inserts the exchange.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Partitioning {
    /// Rows may be processed on any worker (no exchange).
    #[default]
    Any,
    /// All rows with the same value of this column reach the same worker.
    By(String),
    /// Every row reaches worker 0 (for sinks that write one file).
    Single,
}

/// What a stage instance knows about where it runs.
#[derive(Clone)]
pub struct StageContext {
    /// The stage id from the pipeline YAML.
    pub stage_id: String,
    /// This worker's index, `0..workers`.
    pub worker_index: usize,
    /// The number of workers in the whole computation (all processes of a cluster).
    pub workers: usize,
    /// This process's index in its cluster (0 when not in a cluster).
    pub process: usize,
    /// Processes in the cluster (1 when not in a cluster).
    pub processes: usize,
    pub(crate) resources: Resources,
    pub(crate) stop: StopFlag,
    pub(crate) stats: Option<Arc<RunStats>>,
    pub(crate) families: Arc<Families>,
    /// The stage's index in the plan (for the commit gate).
    pub(crate) stage_index: usize,
    pub(crate) commits: Option<Arc<Commits>>,
    pub(crate) states: StageStates,
}

impl StageContext {
    /// A context for running a stage outside the executor (tests, tools).
    pub fn standalone(stage_id: impl Into<String>, worker_index: usize, workers: usize) -> Self {
        StageContext {
            stage_id: stage_id.into(),
            worker_index,
            workers,
            process: 0,
            processes: 1,
            resources: Resources::default(),
            stop: StopFlag::default(),
            stats: None,
            families: Arc::new(crate::Registry::global().families().clone()),
            stage_index: 0,
            commits: None,
            states: StageStates::default(),
        }
    }

    /// The same context with other log families (a standalone context has the built-in ones).
    pub fn with_families(mut self, families: Arc<Families>) -> Self {
        self.families = families;
        self
    }

    /// The log family named `name` (validation checked that it exists).
    pub fn family(&self, name: &str) -> Result<Arc<Family>, StageError> {
        self.families.require(name).cloned().map_err(StageError::Other)
    }

    /// Every log family the pipeline may use.
    pub fn families(&self) -> &Arc<Families> {
        &self.families
    }

    /// The same context with one more resource (see [`resource`](StageContext::resource)); a standalone
    /// context has none.
    pub fn with_resource<T: Any + Send + Sync>(mut self, value: Arc<T>) -> Self {
        self.resources.insert(value);
        self
    }

    /// The resource of type `T` the run was given, if any: what the program running the pipeline shares
    /// with its stages (the embedding API's channels, for instance).
    pub fn resource<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        self.resources.get::<T>()
    }

    /// State this stage's workers in this process share for this run: made by the first worker that asks
    /// (with `init`) and handed to the others (a watermark, a cache, a connection pool). Each stage of each
    /// run has its own: two pipelines in one process, or two stages of one type in a pipeline, never see
    /// each other's, and the other processes of a cluster have theirs. A standalone context shares with
    /// the contexts cloned from it.
    pub fn process_state<T: Any + Send + Sync>(&self, init: impl FnOnce() -> T) -> Arc<T> {
        let mut states = self.states.0.lock().unwrap_or_else(|p| p.into_inner());
        let key = (self.stage_id.clone(), TypeId::of::<T>());
        let state = states.entry(key).or_insert_with(|| Arc::new(init()) as AnyState);
        match Arc::clone(state).downcast::<T>() {
            Ok(state) => state,
            // The entry is keyed by `T`'s type id, so it holds a `T`.
            Err(_) => unreachable!("a stage state of another type under {:?}", std::any::type_name::<T>()),
        }
    }

    /// While every source of this run on this process's workers sends nothing more until what is in flight
    /// passes the sinks (paused because `runtime.max_in_flight` of its batches are in flight, or done
    /// reading, or ended): the lowest logical time they wait at. Nothing at or above it comes before then,
    /// so a stage that gathers rows (`score`) and whose input frontier has reached it has all it will get,
    /// and should let them go. `None` while a source may still send, when every source has ended, and
    /// always in a standalone context.
    pub fn sources_held_back(&self) -> Option<u64> {
        let stats = self.stats.as_ref()?;
        let mut lowest = None;
        for stage in stats.stages.iter().filter(|s| s.kind == StageKind::Source) {
            for t in &stage.held_back {
                match t.load(Ordering::Relaxed) {
                    crate::observe::SOURCE_FREE => return None,
                    crate::observe::SOURCE_ENDED => {}
                    t => lowest = Some(lowest.map_or(t, |l: u64| l.min(t))),
                }
            }
        }
        lowest
    }

    /// True once the run failed (a stage or a peer process): sinks finishing then should not publish what
    /// they hold as if the run had succeeded (a replaced output file stays as it was).
    pub fn run_failed(&self) -> bool {
        self.stats.as_ref().is_some_and(|s| s.failed.load(Ordering::SeqCst))
    }

    /// True once a graceful stop was asked for (Ctrl-C, [`StopHandle::stop`](crate::StopHandle::stop)).
    /// Long-running sources check it between reads.
    pub fn stop_requested(&self) -> bool {
        self.stop.is_set()
    }

    /// Reports a problem that does not stop the stage (a model that cannot be used, so its user is scored
    /// by the generic one): logged by the caller, and listed by `/readyz` (which stays ready) and `/stats`.
    pub fn note(&self, message: impl Into<String>) {
        if let Some(stats) = &self.stats {
            stats.warn(&self.stage_id, message.into());
        }
    }

    /// Adds `n` to one of the stage's named counts (few names: duplicate event ids, evicted users): shown
    /// in the run summary and `/stats`, and exported as `dfp_stage_counter_total{stage, counter}`.
    pub fn count(&self, counter: &str, n: u64) {
        if let Some(stats) = &self.stats {
            stats.count(&self.stage_id, counter, n);
        }
    }

    /// Adds time the stage spent working on threads of its own (training jobs on a pool, see
    /// [`Transform::finish`]) to its busy time in the run summary and `/stats`, as if the runtime had timed
    /// it in one of the stage's calls. It may be called from any thread.
    pub fn add_busy(&self, took: std::time::Duration) {
        if let Some(stats) = &self.stats {
            stats.add_busy(&self.stage_id, took);
        }
    }

    /// Stages that checkpoint their own state ([`Transform::holds_commits`]), and sinks that make what they
    /// wrote durable later than [`Sink::advance`] ([`Sink::holds_commits`]): everything this stage received
    /// at logical times below `frontier` is now durable. Sources commit their read positions no further than
    /// the lowest such frontier of every such stage on every worker. It may be called from any thread.
    pub fn durable(&self, frontier: u64) {
        if let Some(c) = &self.commits {
            c.record(Mark::Durable { stage: self.stage_index, worker: self.worker_index, frontier });
        }
    }

    /// The lowest logical time up to which every source has committed its read positions (0 before the
    /// first commit, and outside the runtime): a restart may deliver again anything that arrived at or
    /// after it. Checkpointing stages keep what they need to recognise such events until it passes them.
    pub fn committed(&self) -> u64 {
        self.commits.as_ref().map_or(0, |c| c.committed_frontier())
    }

    /// Whether a checkpointing stage should checkpoint now rather than at its next interval: a stop was
    /// asked for, or a source has ended and waits for the checkpoint to commit before it finishes.
    pub fn checkpoint_wanted(&self) -> bool {
        self.stop_requested() || self.commits.as_ref().is_some_and(|c| c.wanted())
    }

    /// Tells the runtime whether this stage can do its work (`/readyz`): `Err(reason)` while it cannot
    /// (say, its model registry is unreachable), `Ok(())` once it can. Stages that never call it count as
    /// ready.
    pub fn set_readiness(&self, ready: Result<(), String>) {
        if let Some(stats) = &self.stats {
            stats.set_readiness(&self.stage_id, ready);
        }
    }
}

/// The states of [`StageContext::process_state`], by stage id and type, for one run in one process.
#[derive(Clone, Default)]
pub(crate) struct StageStates(Arc<Mutex<HashMap<(String, TypeId), AnyState>>>);

/// One stage state, of any type.
type AnyState = Arc<dyn Any + Send + Sync>;

/// Values a run shares with its stages, one per type: the program running the pipeline puts them in, a
/// stage takes the one of the type it knows with [`StageContext::resource`].
#[derive(Clone, Default)]
pub struct Resources {
    by_type: HashMap<TypeId, (&'static str, Arc<dyn Any + Send + Sync>)>,
}

impl Resources {
    /// No resources.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `value`, replacing the resource of the same type.
    pub fn insert<T: Any + Send + Sync>(&mut self, value: Arc<T>) {
        self.by_type.insert(TypeId::of::<T>(), (std::any::type_name::<T>(), value));
    }

    /// The resource of type `T`, if there is one.
    pub fn get<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        let (_, value) = self.by_type.get(&TypeId::of::<T>())?;
        Arc::clone(value).downcast::<T>().ok()
    }
}

impl std::fmt::Debug for Resources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&str> = self.by_type.values().map(|(name, _)| *name).collect();
        names.sort_unstable();
        f.debug_set().entries(names).finish()
    }
}

/// A shared stop flag.
#[derive(Clone, Default, Debug)]
pub(crate) struct StopFlag(Arc<AtomicBool>);

impl StopFlag {
    pub(crate) fn set(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub(crate) fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// A record a stage could not handle, with the reason. The runtime adds the stage id and routes it to the
/// pipeline's dead-letter output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The id of the stage that rejected the record (filled in by the runtime).
    pub stage: String,
    /// Why the record was rejected, naming the field when there is one.
    pub reason: String,
    /// The record as text: the raw input line, or the row as JSON.
    pub record: String,
    /// Where the record came from (`file.jsonl:17`), when known.
    pub origin: String,
}

impl DeadLetter {
    /// A dead letter with a reason, the record text and its origin.
    pub fn new(reason: impl Into<String>, record: impl Into<String>, origin: impl Into<String>) -> Self {
        DeadLetter { stage: String::new(), reason: reason.into(), record: record.into(), origin: origin.into() }
    }
}

/// Where a stage puts what it produces: batches for the next stages, dead letters for the dead-letter
/// output.
#[derive(Debug, Default)]
pub struct Emitter {
    pub(crate) batches: Vec<Batch>,
    pub(crate) dead: Vec<DeadLetter>,
    pub(crate) skipped: u64,
    pub(crate) advance: Option<u64>,
    pub(crate) event_time: Option<i64>,
    pub(crate) floor: u64,
}

impl Emitter {
    /// An empty emitter.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sends a batch downstream. Empty batches are dropped.
    pub fn emit(&mut self, batch: Batch) {
        if batch.num_rows() > 0 {
            self.batches.push(batch);
        }
    }

    /// Rejects one record; it goes to the dead-letter output and is counted.
    pub fn dead_letter(&mut self, dead: DeadLetter) {
        self.dead.push(dead);
    }

    /// Sources that name logical times: moves this source's time up to `time` without emitting anything,
    /// so that stages holding rows until a time is complete (such as `features`) release what came before.
    /// A streaming source calls it when it has nothing new to read.
    pub fn advance_time(&mut self, time: u64) {
        self.advance = Some(self.advance.map_or(time, |t| t.max(time)));
    }

    /// Sources that name logical times: the lowest time they should name now — the source's current time,
    /// raised past the newest time any source of the cluster has emitted at. A source whose own clock lags
    /// (it was idle while a peer process read on) moves up to it when idle, so that stages releasing rows
    /// in time order do not wait for it; 0 outside the runtime.
    pub fn time_floor(&self) -> u64 {
        self.floor
    }

    /// Counts records dropped on purpose (not errors: e.g. Duo enrollment events), so that the run report
    /// still adds up: rows in = rows out + dead letters + skipped.
    pub fn skip(&mut self, records: u64) {
        self.skipped += records;
    }

    /// Reports the event time (microseconds since the Unix epoch) of the newest event in what this stage
    /// handled: the runtime publishes now − the newest time as the stage's input lag. Normalizers and
    /// streaming sources call it.
    pub fn observe_event_time(&mut self, unix_micros: i64) {
        self.event_time = Some(self.event_time.map_or(unix_micros, |t| t.max(unix_micros)));
    }

    /// Records skipped so far.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Batches emitted so far (for tests and wrappers).
    pub fn batches(&self) -> &[Batch] {
        &self.batches
    }

    /// Dead letters emitted so far (for tests and wrappers).
    pub fn dead_letters(&self) -> &[DeadLetter] {
        &self.dead
    }

    /// Takes everything emitted so far.
    pub fn take(&mut self) -> (Vec<Batch>, Vec<DeadLetter>) {
        (std::mem::take(&mut self.batches), std::mem::take(&mut self.dead))
    }
}

/// What a source reports after a poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceStatus {
    /// More data may be available right away: poll again soon.
    Ready,
    /// Nothing available now (waiting on a stream): poll again after a short pause.
    Idle,
    /// The source has no more data; `finish` follows.
    Exhausted,
}

/// Produces batches. One instance per worker; each instance reads its own share of the input
/// (see [`StageContext::worker_index`]), deterministically.
pub trait Source: Send {
    /// Called once before the first poll.
    fn open(&mut self, _ctx: &StageContext) -> Result<(), StageError> {
        Ok(())
    }
    /// Produces some batches (a bounded amount: the runtime applies backpressure between polls).
    fn poll(&mut self, ctx: &StageContext, out: &mut Emitter) -> Result<SourceStatus, StageError>;
    /// Called once after the source is exhausted or asked to stop.
    fn finish(&mut self, _ctx: &StageContext) -> Result<(), StageError> {
        Ok(())
    }
    /// Every batch this source emitted at a logical time below `frontier` has passed every sink (and the
    /// dead-letter output): at-least-once sources commit their read positions up to there. Called with
    /// increasing frontiers.
    fn completed(&mut self, _frontier: u64) -> Result<(), StageError> {
        Ok(())
    }
    /// The runtime stops polling while too much is in flight (`true`) and starts again once the sinks caught
    /// up (`false`). Sources that fetch in the background (Kafka) pause fetching here.
    fn backpressure(&mut self, _paused: bool) -> Result<(), StageError> {
        Ok(())
    }
    /// Whether the input has an end (files) rather than being a stream that is stopped (Kafka, a watched
    /// folder). A run stopped while a bounded source still had input reports itself as stopped early.
    fn bounded(&self) -> bool {
        true
    }
    /// Whether the runtime should wait, once the source is exhausted or stopped, until everything it
    /// emitted has passed the sinks (with a last [`completed`](Source::completed)) before calling
    /// [`finish`](Source::finish). Off by default: most sources have nothing to commit.
    fn wants_completion(&self) -> bool {
        false
    }
}

/// Turns each batch into zero or more batches; may keep state across batches (keyed by a column when
/// its [`input_partitioning`](Transform::input_partitioning) says so).
pub trait Transform: Send {
    /// How the input must be spread over workers.
    fn input_partitioning(&self) -> Partitioning {
        Partitioning::Any
    }
    /// Whether this stage keeps state that a restart restores from its own checkpoints (`features` with
    /// `checkpoint:`). When true, sources commit their read positions only up to what the stage reported
    /// with [`StageContext::durable`], so that a restart replays exactly what the checkpoint lacks.
    fn holds_commits(&self) -> bool {
        false
    }
    /// Called once before the first batch.
    fn open(&mut self, _ctx: &StageContext) -> Result<(), StageError> {
        Ok(())
    }
    /// Handles one batch.
    fn process(&mut self, batch: Batch, out: &mut Emitter) -> Result<(), StageError>;
    /// Called when the input frontier advances: every batch whose logical time
    /// ([`Envelope::time`](crate::Envelope::time)) is below `frontier` has been delivered. Stages that must
    /// see their input in a deterministic order (per-user event-time state) buffer in `process` and release
    /// here.
    fn advance(&mut self, _frontier: u64, _out: &mut Emitter) -> Result<(), StageError> {
        Ok(())
    }
    /// Called on every activation after the input was handled, for stages that hold rows back for a while
    /// (gathering, windows): emit what is due and return how long until the next call is wanted. The
    /// runtime wakes the stage up then even when no input arrives.
    fn poll_timer(&mut self, _out: &mut Emitter) -> Result<Option<std::time::Duration>, StageError> {
        Ok(None)
    }
    /// The lowest logical time ([`Envelope::time`](crate::Envelope::time)) of the rows this stage keeps
    /// after a call returned (rows gathered for [`poll_timer`](Transform::poll_timer)), or `None` when it
    /// keeps none. The runtime holds the stage's output at that time, so nothing downstream — sinks, and the
    /// source commits that follow them — counts those rows as done while they wait here; each batch the
    /// stage emits leaves at its own envelope time. A stage that keeps rows past `process` without saying
    /// so here (or releasing them in [`advance`](Transform::advance)) breaks at-least-once delivery: a
    /// Kafka source could commit their offsets before they reach a sink.
    ///
    /// After [`finish`](Transform::finish), `Some` (any time) means the stage is still working: see there.
    fn holding(&self) -> Option<u64> {
        None
    }
    /// Called once when the input is exhausted; may emit what it held back.
    ///
    /// A stage with long work left at the end (training models) may hand it to other threads and return:
    /// as long as [`holding`](Transform::holding) then returns `Some`, the runtime keeps the stage's output
    /// open and calls [`poll_timer`](Transform::poll_timer) at the delays it asks for (every 50 ms when it
    /// asks for none), where the stage emits what is done. The worker meanwhile runs its other stages, so
    /// several such stages work at once. Once `holding` returns `None` the stage is finished; an aborted run
    /// drops it (its [`Drop`] should tell the other threads to stop).
    fn finish(&mut self, _out: &mut Emitter) -> Result<(), StageError> {
        Ok(())
    }
}

/// Consumes batches.
pub trait Sink: Send {
    /// How the input must be spread over workers ([`Partitioning::Single`] for one output file).
    fn input_partitioning(&self) -> Partitioning {
        Partitioning::Any
    }
    /// Called once before the first batch.
    fn open(&mut self, _ctx: &StageContext) -> Result<(), StageError> {
        Ok(())
    }
    /// Whether this sink makes what it wrote durable on its own schedule (one transaction for many epochs)
    /// and says when with [`StageContext::durable`]: then sources commit their read positions only up to
    /// what it reported, on every worker (a worker that receives nothing reports its input frontier), so
    /// nothing it has not made durable counts as delivered. Default: no (see [`advance`](Sink::advance)).
    fn holds_commits(&self) -> bool {
        false
    }
    /// Writes one batch. A batch counts as written once this returns, unless the sink makes it durable
    /// later, in [`advance`](Sink::advance) (then it counts once that returns) or when it reports it
    /// ([`holds_commits`](Sink::holds_commits)).
    fn write(&mut self, batch: Batch) -> Result<(), StageError>;
    /// Called when the input frontier advances, before anything the sink took in below `frontier` counts
    /// as written (before a Kafka source may commit it): a sink that groups the writes of an epoch (one
    /// transaction for its batches) makes them durable here. Default: nothing.
    fn advance(&mut self, _frontier: u64) -> Result<(), StageError> {
        Ok(())
    }
    /// Called once when the input is exhausted: flush and close.
    fn finish(&mut self) -> Result<(), StageError> {
        Ok(())
    }
    /// The rows the sink's destination refused for their content (a document a search index cannot map),
    /// each with the reason: the runtime takes them after every call above and routes them to the
    /// pipeline's dead-letter output. Default: none.
    fn take_dead_letters(&mut self) -> Vec<DeadLetter> {
        Vec::new()
    }
}

/// A stream of batches inside one worker's dataflow; the timestamp is the source epoch.
pub type BatchStream<'s> = timely::dataflow::Stream<'s, u64, Vec<Batch>>;

/// What a [`DataflowTransform`] builds: its main output and its named outputs (read in YAML as
/// `inputs: [stage.port]`, each port declared in [`StageConfig::OUTPUTS`](crate::StageConfig::OUTPUTS)).
pub struct DataflowOutputs<'s> {
    /// The main output (`inputs: [stage]`).
    pub main: BatchStream<'s>,
    /// The named outputs.
    pub ports: Vec<(&'static str, BatchStream<'s>)>,
}

/// How a [`DataflowTransform`]'s operators report to the run: a stage failure stops the pipeline, as an
/// error from [`Transform::process`] would.
#[derive(Clone)]
pub struct DataflowEnv {
    /// Where the stage runs.
    pub ctx: StageContext,
    pub(crate) fail: Arc<dyn Fn(StageError) + Send + Sync>,
    pub(crate) aborted: Arc<dyn Fn() -> bool + Send + Sync>,
}

impl DataflowEnv {
    /// An environment for building a dataflow stage outside the executor (tests, embedding): `fail`
    /// receives the stage's errors, `aborted` says whether to drop input.
    pub fn new(
        ctx: StageContext,
        fail: impl Fn(StageError) + Send + Sync + 'static,
        aborted: impl Fn() -> bool + Send + Sync + 'static,
    ) -> Self {
        DataflowEnv { ctx, fail: Arc::new(fail), aborted: Arc::new(aborted) }
    }
    /// Stops the pipeline with `error`, naming this stage (the first error of a run wins).
    pub fn fail(&self, error: StageError) {
        (self.fail)(error)
    }
    /// Whether the run is stopping after an error; operators drop their input then.
    pub fn aborted(&self) -> bool {
        (self.aborted)()
    }
}

/// A transform that adds its own timely and differential-dataflow operators to each worker's dataflow,
/// instead of being fed batch by batch (only static, built-in stages can: the operators are Rust generics).
/// The runtime counts the rows in and out around what it builds; the stage routes its own data between
/// workers (differential's arrangements exchange by key).
pub trait DataflowTransform: Send {
    /// Builds the operators on one worker, reading `input`.
    fn build<'s>(self: Box<Self>, input: BatchStream<'s>, env: DataflowEnv) -> DataflowOutputs<'s>;
}

/// A built stage instance.
pub enum StageInstance {
    /// A source.
    Source(Box<dyn Source>),
    /// A transform.
    Transform(Box<dyn Transform>),
    /// A transform made of its own dataflow operators.
    Dataflow(Box<dyn DataflowTransform>),
    /// A sink.
    Sink(Box<dyn Sink>),
}

impl StageInstance {
    /// The kind of the instance.
    pub fn kind(&self) -> StageKind {
        match self {
            StageInstance::Source(_) => StageKind::Source,
            StageInstance::Transform(_) | StageInstance::Dataflow(_) => StageKind::Transform,
            StageInstance::Sink(_) => StageKind::Sink,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>() {}

    #[test]
    fn stage_types_are_send() {
        assert_send::<Box<dyn Source>>();
        assert_send::<Box<dyn Transform>>();
        assert_send::<Box<dyn Sink>>();
        assert_send::<StageInstance>();
        assert_send::<StageContext>();
        assert_send::<Batch>();
    }

    #[test]
    fn process_state_is_one_per_stage_and_type_among_contexts_of_one_run() {
        use std::sync::atomic::AtomicU64;
        let first = StageContext::standalone("correlate", 0, 2);
        let mut second = first.clone();
        second.worker_index = 1;
        let a = first.process_state(|| AtomicU64::new(7));
        a.store(8, Ordering::SeqCst);
        assert_eq!(second.process_state(|| AtomicU64::new(0)).load(Ordering::SeqCst), 8, "the workers share it");
        assert_eq!(*second.process_state(|| String::from("other type")), "other type");
        let mut other_stage = first.clone();
        other_stage.stage_id = "correlate_2".into();
        assert_eq!(other_stage.process_state(|| AtomicU64::new(1)).load(Ordering::SeqCst), 1, "another stage's own");
        let other_run = StageContext::standalone("correlate", 0, 2);
        assert_eq!(other_run.process_state(|| AtomicU64::new(2)).load(Ordering::SeqCst), 2, "another run's own");
    }
}
